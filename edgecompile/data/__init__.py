"""Models and data shipped inside the package (the embedded default used when no MODEL is given)."""
