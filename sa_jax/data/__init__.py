"""Training data: the sa-prep clip folders as a grain pipeline (`clips`) and synthetic clips (`synthetic`)."""
