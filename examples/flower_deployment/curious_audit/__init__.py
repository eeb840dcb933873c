"""Chapter 8's curious Flower server, run as a Flower App in a real deployment."""
