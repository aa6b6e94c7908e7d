"""Offline replay of fixtures through the real addon, and recording them from live traffic."""
