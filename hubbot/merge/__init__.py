"""One merge, in the order it runs: plan from headers, the streaming engine, the shard writer,
vocabularies and tokenizer output, mixtures of experts and their routers, the card and publishing."""
