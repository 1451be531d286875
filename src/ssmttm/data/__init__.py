"""Data: the synthetic captioned-music corpus, preparing collections into token shards, datasets."""
