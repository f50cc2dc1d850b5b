"""The one training loop and its parts: state sources (where states come from) and signals (what is applied)."""
