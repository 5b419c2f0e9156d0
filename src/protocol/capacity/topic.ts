/** The gossip topic capacity adverts travel on. */
export const CAPACITY_TOPIC = '/tensormesh/capacity/1'
