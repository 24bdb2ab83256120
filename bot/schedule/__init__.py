"""Scheduled calls: ``!schedule``, a persistent APScheduler job store, and what a job does."""
