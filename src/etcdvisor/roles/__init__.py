"""Role runners, one per role type, with their pure math kept apart."""
