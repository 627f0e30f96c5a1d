"""The data path: streaming loader over corpus shards, batch assembly in workers, transport, pixel statistics and validity."""
