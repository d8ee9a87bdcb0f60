%% A checked message stream between two nodes, for the fault tests.
%% The receiver counts what arrives: in order and intact, or lost across a
%% nodedown. Anything else (corrupted, duplicated, reordered, or a gap with
%% no nodedown to explain it) is counted as bad.
-module(stream).
-export([start_receiver/0, report/0, start_sender/3, stop_sender/0, sender_report/0]).

start_receiver() ->
    Pid = spawn(fun() ->
        net_kernel:monitor_nodes(true),
        rx(#{last => 0, delivered => 0, lost => 0, bad => 0, downs => 0, down_since_last => false})
    end),
    register(stream_rx, Pid),
    ok.

rx(S = #{last := Last}) ->
    receive
        {data, Seq, Bin, Sum} ->
            Intact = erlang:md5(Bin) =:= Sum,
            S1 = if
                not Intact -> bump(bad, 1, S);
                Seq =< Last -> bump(bad, 1, S);
                Seq =:= Last + 1 -> S;
                true ->
                    case maps:get(down_since_last, S) of
                        true -> bump(lost, Seq - Last - 1, S);
                        false -> bump(bad, 1, S)
                    end
            end,
            rx(bump(delivered, 1, S1#{last := max(Seq, Last), down_since_last := false}));
        {ping, From, Ref} ->
            From ! {pong, Ref},
            rx(S);
        {nodedown, _} ->
            rx(bump(downs, 1, S#{down_since_last := true}));
        {nodeup, _} ->
            rx(S);
        {report, From} ->
            From ! {report, S},
            rx(S)
    end.

bump(K, N, S) -> S#{K := maps:get(K, S) + N}.

report() ->
    stream_rx ! {report, self()},
    receive {report, S} -> S after 5000 -> timeout end.

%% Sends for Ms milliseconds to stream_rx on Node, a round trip every 50
%% messages so that no more than that is in flight.
start_sender(Node, Ms, Size) ->
    Pid = spawn(fun() ->
        End = erlang:monotonic_time(millisecond) + Ms,
        tx(Node, End, Size, 1, 0)
    end),
    register(stream_tx, Pid),
    ok.

tx(Node, End, Size, Seq, Synced) ->
    case erlang:monotonic_time(millisecond) > End orelse stop_asked(Seq) of
        true ->
            %% a last sync once the path is back, so the tail is counted
            final_sync(Node, 50),
            receive {report, From} -> From ! {sent, Seq - 1, Synced} end;
        false ->
            Bin = crypto:strong_rand_bytes(Size),
            {stream_rx, Node} ! {data, Seq, Bin, erlang:md5(Bin)},
            S2 = case Seq rem 50 of
                0 -> case sync(Node, 2000) of ok -> Synced + 1; _ -> timer:sleep(100), Synced end;
                _ -> Synced
            end,
            tx(Node, End, Size, Seq + 1, S2)
    end.

%% Told to stop (looked at between two syncs).
stop_asked(Seq) when Seq rem 50 =:= 1 ->
    receive stop -> true after 0 -> false end;
stop_asked(_) ->
    false.

%% Ends the sending early (at the next sync point); the tail is synced.
stop_sender() ->
    stream_tx ! stop,
    ok.

sync(Node, T) ->
    Ref = make_ref(),
    {stream_rx, Node} ! {ping, self(), Ref},
    receive {pong, Ref} -> ok after T -> timeout end.

final_sync(_Node, 0) -> timeout;
final_sync(Node, N) ->
    case sync(Node, 1000) of ok -> ok; _ -> final_sync(Node, N - 1) end.

%% Waits for the sender to finish, however long it runs.
sender_report() ->
    Ref = monitor(process, stream_tx),
    stream_tx ! {report, self()},
    receive
        {sent, N, Synced} -> demonitor(Ref, [flush]), {sent, N, Synced};
        {'DOWN', Ref, _, _, Why} -> {sender_died, Why}
    end.
