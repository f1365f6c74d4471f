"""Built-in `report` plugins."""
