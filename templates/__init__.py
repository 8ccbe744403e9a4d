"""Troposphere code for the Mastodon stack: one module per tier, composed in `stack`."""
