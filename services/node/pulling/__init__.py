"""A checkpoint's way into service: watch checkpoint.ready, pull and verify, register, activate."""
