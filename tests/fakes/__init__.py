"""Fakes at the project's boundaries: stand-ins for programs fleetd drives but that cannot run here."""
