"""Tests of the tag language (tagquery/)."""
