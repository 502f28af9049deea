"""Work orders (工单): lifecycle, SLA clocks on business calendars, back-office escalation, macros."""
