"""The query-log archiver: copies ``mc:queries`` to hash-chained segments on disk, then trims the stream."""
