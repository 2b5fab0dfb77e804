"""Host-side simulators: the consortium chain with its tax bureau, and POS tills."""
