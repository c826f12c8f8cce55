"""Benchmarks for the chatmem server, run against real processes on the loopback interface."""
