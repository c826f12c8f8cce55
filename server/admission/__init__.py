"""Admission: per-workspace quotas, the in-flight cap and the stream cap, as the innermost pipeline layer."""
