"""Tier backends behind one interface: tier (interface, cpu tier, factory), disk, gpu, remote (Redis), checksum."""
