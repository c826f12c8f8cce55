"""Process control shared by the tests and the benchmarks: real redis-server, PostgreSQL and chatmem servers."""
