"""Model definitions, configuration parsing and weight loading."""
