"""Small shared helpers with no PolyCom logic (atomic file writes)."""
