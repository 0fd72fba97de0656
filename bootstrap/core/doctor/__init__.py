"""doctor's rules by link of the chain, their engine and the evidence they read."""
