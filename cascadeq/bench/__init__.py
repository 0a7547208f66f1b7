"""`cascadeq bench ...`: measurements of the live system, each printing a JSON last line."""
