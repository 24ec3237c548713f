"""IISAN pipeline package."""
