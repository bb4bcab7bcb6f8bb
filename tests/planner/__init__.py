"""Tests of nanoserve.planner (a package so that generic names like test_memory.py cannot collide)."""
