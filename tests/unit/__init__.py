"""Unit tests: pure logic and in-memory fakes of our own storage Protocols."""
