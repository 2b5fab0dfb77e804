"""The consortium chain simulator: N nodes, hash-linked blocks, 2f+1 finality, tax bureau."""
