"""Test helpers shared by the test modules (imported as ``helpers.<module>``)."""
