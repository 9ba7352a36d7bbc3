"""Metering: usage records per job and the settlement outbox."""
