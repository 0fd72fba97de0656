"""The cluster layer: kubectl does the talking (users have it, with their contexts and auth)."""
