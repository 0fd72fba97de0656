"""click commands. Thin: parse, call one function, print."""
