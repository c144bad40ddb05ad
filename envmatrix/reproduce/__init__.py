"""Reproduction: resume a run, archive and restore its images, replay it, push its images."""
