"""What tests and benchmarks need that the installed package must not carry."""
