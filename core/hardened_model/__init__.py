"""What the operator, the trainer and the server share (issue 17 moves the rest of the shared contract here:
spec, contracts, signing, artifacts, gates). Today: the networks and their registry."""
