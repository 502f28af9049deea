"""Routing (ACD): queues, agent presence and capacity, skills matching, offers as leases, the simulator."""
