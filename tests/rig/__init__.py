"""Helpers that several test packages share: imported by tests and conftests, never a test module.

A test module imports what it shares from here (or a fixture from a conftest by name), never
another test module or a conftest.
"""
