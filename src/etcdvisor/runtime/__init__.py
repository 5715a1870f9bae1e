"""The supervisor runtime: one decision loop fed by events from edge threads."""
