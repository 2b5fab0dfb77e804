"""The point-of-sale simulator: tills that drive syncd's POS API."""
