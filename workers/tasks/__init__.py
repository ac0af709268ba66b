"""hybridnas stage."""
