"""The HTTP side shared by the worker and the trigger service."""
