"""Test harness shared by every test folder: tree snapshots, kernel mounts, source trees."""
