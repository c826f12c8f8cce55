"""chatmem test suite."""
