"""The phases of `make bench`, one module per benchmark of issue 9 (see bench/README.md)."""
