"""Shared test helpers: small scenes with exact ground truth, a server subprocess. Not tests themselves."""
