"""Spam scoring: rules (rules.py), each user's learning filter (bayes.py), tokens (tokenize.py)."""
