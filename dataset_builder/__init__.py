"""The Mirror dataset: schema, validation of raw records, image backends and the Hub-ready builder."""
