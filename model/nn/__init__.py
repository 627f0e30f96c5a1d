"""The network: tokenizer, encodings, encoder, decoder, frozen target, losses and the OlmoEarth model that joins them."""
