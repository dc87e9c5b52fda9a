"""Local fakes of external services used by tests and fixture recording."""
