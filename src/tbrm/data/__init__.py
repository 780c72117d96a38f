"""Task generators and DataModules."""
