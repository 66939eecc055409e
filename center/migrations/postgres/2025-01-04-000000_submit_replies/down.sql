DROP TABLE submit_replies;
