"""Example services that safeship deploys in its demos and live tests."""
